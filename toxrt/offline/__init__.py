"""Offline identity refinement of a recorded session (contrastive ResNet18 + K-means).

Only this package imports torch, and only when its modules are imported: ``import toxrt`` and the
live stage never load it. Entry point::

    from toxrt.offline.refine import RefineOptions, refine_session

Modules: ``dataset`` (fragments, coexistence, images on demand; numpy only), ``sampler`` (pairs),
``model`` (ResNet18 / small CNN), ``loss`` (contrastive), ``train`` (training and the silhouette
stopping rule), ``cluster`` (K-means, probabilities, silhouette), ``assign`` (fragment identities),
``refine`` (the stages end to end, and the files).
"""
