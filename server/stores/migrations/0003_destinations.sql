-- Destinations (webhooks) and one delivery row per (destination, membership change).
-- The row is the outbox between the delivery worker's consumer and its senders: a change is recorded
-- for every matching destination before its offset is committed, then each destination's sender calls
-- it in order per user, retrying until delivered or given up (failed; replay sends it again).

CREATE TABLE destinations (
    id                         uuid PRIMARY KEY,
    name                       text NOT NULL,
    type                       text NOT NULL DEFAULT 'WEBHOOK' CHECK (type IN ('WEBHOOK')),
    url                        text NOT NULL,
    segment_ids                uuid[],              -- NULL: every segment
    events                     text[] NOT NULL,     -- subset of {entered, exited}
    header_names               text[] NOT NULL DEFAULT '{}',
    headers_sealed             text,                -- the headers as a sealed JSON object (values may be credentials)
    secret_sealed              text NOT NULL,       -- the signing secret, sealed with AM_SECRETS_KEY
    secret_hint                text NOT NULL,       -- whsec_…last4, for display
    previous_secret_sealed     text,                -- after a rotation, also signed with until it expires
    previous_secret_expires_at timestamptz,
    status                     text NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'PAUSED')),
    paused_reason              text,
    consecutive_failures       integer NOT NULL DEFAULT 0,
    last_delivery_at           timestamptz,
    last_error                 text,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX destinations_name ON destinations (lower(name));

CREATE TABLE destination_deliveries (
    seq              bigserial PRIMARY KEY,          -- arrival order: per user, deliveries go in seq order
    destination_id   uuid NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    message_id       uuid NOT NULL,                  -- webhook-id: the same on every attempt and replay
    user_id          text NOT NULL,
    segment_id       uuid NOT NULL,
    change           text NOT NULL CHECK (change IN ('entered', 'exited')),
    segment_version  integer NOT NULL,
    changed_at       timestamptz NOT NULL,           -- when the user entered or left
    body             text NOT NULL,                  -- the exact JSON sent on every attempt
    -- pending → delivered | retrying → … → delivered | failed; replay puts failed/delivered back to pending
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'retrying', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    first_attempt_at timestamptz,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_status_code integer,
    last_answer      text,                           -- the start of the last answer's body
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (destination_id, message_id)
);
CREATE INDEX destination_deliveries_open ON destination_deliveries (destination_id, user_id, seq)
    WHERE status IN ('pending', 'retrying');
CREATE INDEX destination_deliveries_status ON destination_deliveries (destination_id, status, seq);
CREATE INDEX destination_deliveries_changed ON destination_deliveries (destination_id, changed_at);
