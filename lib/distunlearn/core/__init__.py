"""The pure layer: numpy (and pyarrow, scipy) math that never imports pyspark.  A test
imports every module of it in a process where pyspark cannot be imported."""
