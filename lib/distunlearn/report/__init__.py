"""The HTML report of a run: its figures (:mod:`~distunlearn.report.figures`) and page
(:mod:`~distunlearn.report.page`); the command that reads the tables is
:mod:`distunlearn.commands.report`."""
