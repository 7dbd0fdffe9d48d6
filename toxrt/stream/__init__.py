"""The live stream to other programs: ``wire`` (the versioned message format), ``sockets`` (ZeroMQ
binding and receiving), ``publish`` (the non-blocking publisher), ``client`` and ``listen`` (receiving
it), ``markers`` (markers from a stimulus program), ``live_stream`` (all of it, once per frame of a run).
"""
