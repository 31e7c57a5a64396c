"""Use cases. Only services know about sessions and transactions; they raise domain errors from ledger.errors."""
