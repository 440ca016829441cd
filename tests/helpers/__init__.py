"""Helpers shared by several test modules (builders, fixtures readers, loaders); no tests here."""
