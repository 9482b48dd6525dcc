"""pytest hooks for the benchmarks; the machinery lives in benchutil.py."""
import benchutil  # noqa: F401  (sets TRITON_INTERPRET before any bench module imports triton)


def pytest_terminal_summary(terminalreporter):
    benchutil.print_summary(terminalreporter)
