"""``python -m distunlearn`` is the ``distunlearn`` console command."""

from distunlearn.cli import console

console()
