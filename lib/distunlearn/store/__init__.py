"""Every Delta read and write: the input tables (:mod:`~distunlearn.store.sources`), the output
folder's tables (:mod:`~distunlearn.store.tables`, :mod:`~distunlearn.store.output`), and
the tables the nightly cleaning changes (:mod:`~distunlearn.store.lake`)."""
