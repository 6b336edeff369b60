"""The business rules, free of transport types: validation, idempotency, paging."""
