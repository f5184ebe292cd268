-- Identity: anonymous ids linked to known users, and the audit of deleted users.
-- A link is made once and never moved (an anonymous id belongs to one user); the Ingestion API makes
-- it before the rule job merges the profiles, so a refusal (409) can be answered at once.

CREATE TABLE user_aliases (
    anonymous_id text PRIMARY KEY,
    user_id      text NOT NULL,
    linked_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX user_aliases_user ON user_aliases (user_id);

-- One row per erasure request: who asked and when, and the user id only as a SHA-256 hash.
CREATE TABLE user_deletions (
    id           bigserial PRIMARY KEY,
    user_id_hash text NOT NULL,
    requested_by text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    aliases      integer NOT NULL DEFAULT 0
);
