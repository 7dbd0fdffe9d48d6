"""The simulated arena: animals with exact ground truth, for the demo, the tests and the benchmarks.

``motion`` (random walks), ``raster`` (bodies, patterns, light, crossings), ``arena``
(:class:`~toxrt.sim.arena.SimulatedArena`: frames and ground truth), ``writer``
(:func:`~toxrt.sim.writer.write_simulation`: a video, its ground truth and a parameter file).
"""
