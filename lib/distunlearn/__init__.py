"""distunlearn: distributional unlearning by selective data removal, on Spark and Delta Lake.

Layers (the data path is visible from the module names):

1. pure numpy, no pyspark: ``stats`` (mergeable sufficient statistics), ``covariance``,
   ``scoring`` (the paper's rules), ``budgets``, ``batches`` (Arrow -> numpy);
2. Spark transformations, DataFrame -> DataFrame: ``prepare``, ``aggregate``, ``score``,
   ``select``;
3. I/O: ``io`` (inputs and the Delta output tables);

tied together by ``pipeline`` and exposed by ``cli`` (console command ``distunlearn``) and
the thin ``jobs/*.py`` spark-submit entry points.
"""

__version__ = "0.1.0"
