"""Metadata: SQLAlchemy models (models.py) and the database handle (session.py)."""

from registry.db.models import Base, as_stored, utcnow
from registry.db.session import Database

__all__ = ["Base", "Database", "as_stored", "utcnow"]
