"""Spark transformations: DataFrame -> DataFrame (or small values collected to the driver),
no reads or writes of tables (those are :mod:`distunlearn.store`)."""
