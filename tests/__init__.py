"""The test suite, laid out like the asdcli package (see tests/README.md). Packages (with __init__.py) so that
test files in different folders may share a basename and `tests.helpers` imports from any folder."""
