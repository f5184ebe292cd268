"""The delivery worker: records every change on `segment-membership` for each matching destination and
calls the destinations (signed webhooks), at least once and in order per (destination, user)."""
