"""Data: RecordIO, verification packs, image folders and synthetic faces."""
