"""Offline identity refinement of a recorded session (``toxrt refine``): by accumulation, or with a
contrastive network (ResNet18 or a small CNN) + K-means.

Only this package imports torch, and only when its modules are imported: ``import toxrt`` and the
live stage never load it. Entry point (settings: the ``[refine]`` table, ``toxrt.config.RefineConfig``)::

    from toxrt.offline.refine import refine_session

Modules: ``dataset`` (identification images on demand, checks; numpy only), ``sampler`` (pairs),
``model`` (ResNet18 / small CNN), ``loss`` (contrastive), ``train`` (training and the silhouette
stopping rule), ``cluster`` (K-means, probabilities, silhouette), ``assign`` (fragment identities),
``refine`` (the stages end to end, and the files). Fragments and their coexistence are
``toxrt.fragments``'.
"""
