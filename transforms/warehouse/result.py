"""What a warehouse backend reports for one batch of events."""
from collections import Counter


class WriteResult:
    def __init__(self):
        self.stored = []        # events whose rows were written
        self.duplicates = []    # events whose message_id was already stored
        self.failed = []        # (event, error message): become insert_failed dead letters
        self.rows = Counter()   # table -> rows written
        self.type_conflicts = Counter()
        self.capped = Counter()
        self.shredded = 0       # events written in bulk (transforms.warehouse.shred)

    def merge(self, other: "WriteResult") -> None:
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.failed += other.failed
        self.rows.update(other.rows)
        self.type_conflicts.update(other.type_conflicts)
        self.capped.update(other.capped)
        self.shredded += other.shredded
