"""The ``distunlearn`` commands: option parsing, the Spark session, and one thin module per
command family, each a caller of :mod:`distunlearn.engine` and :mod:`distunlearn.store`."""
