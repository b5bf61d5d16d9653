"""Data: the image records and their decoding (``records``, ``imageio``), the splits (``split``), twin detection
(``duplicates``) and the decoded-tensor cache (``cache``)."""
