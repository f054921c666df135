"""``python -m distunlearn`` is the ``distunlearn`` console command."""

from distunlearn.commands.cli import console

console()
