"""PySide6 + qasync desktop app for collaborative editing (adapters over ``crdt_sync``)."""
