"""The output tools on a finished session: ``results`` (what they read), ``report`` and
``report_figures``, ``video``, ``stats`` and ``export``; each writes only its own file or folder.
"""
