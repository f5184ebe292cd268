-- Why a user is in a segment: the rule engine's `because` of every membership change (the event, the clock,
-- a new definition, ... and the rule's leaves it flipped), kept with the membership it made and in the ledger.
-- NULL where no reason was given: STATIC members, a deleted STATIC segment's exits, rows from before this.
-- Nullable without a default: adding the columns rewrites neither table.

ALTER TABLE segment_memberships ADD COLUMN because jsonb;  -- the reason of the entry that holds
ALTER TABLE membership_changes ADD COLUMN because jsonb;   -- the reason of each entry and exit
