"""What ``run_pipeline.py`` and ``benchmarks/paper_table.py`` share: the profiles
(``profiles``), the pretraining registry (``pretrainers``), the data steps and the
run record (``steps``) and the published numbers (``published``).

It sits at the packages' level: it calls the ``main(argv)`` of the package scripts
(data_processing, pde_self_supervised, other_ssl) and never a root script, so the
U-Net training (``train.py``) stays with the two entry scripts that run it.
"""
