from mpq.cli.main import main

__all__ = ["main"]
