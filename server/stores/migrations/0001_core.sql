-- Segments, their publishing outbox, and the PostgreSQL profile store (local target).

CREATE TABLE segments (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    type        text NOT NULL CHECK (type IN ('DYNAMIC', 'STATIC')),
    status      text NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'PAUSED', 'ARCHIVED')),
    rules       jsonb,
    version     integer NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE UNIQUE INDEX segments_live_name ON segments (lower(name)) WHERE deleted_at IS NULL;

-- Written in the same transaction as the segment; a relay publishes rows in seq order.
CREATE TABLE segment_outbox (
    seq          bigserial PRIMARY KEY,
    segment_id   uuid NOT NULL,
    payload      jsonb,            -- NULL publishes a tombstone
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX segment_outbox_pending ON segment_outbox (seq) WHERE published_at IS NULL;

CREATE TABLE user_profiles (
    user_id    text PRIMARY KEY,
    profile    jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE segment_memberships (
    segment_id      uuid NOT NULL,
    user_id         text NOT NULL,
    segment_version integer NOT NULL,
    entered_at      timestamptz NOT NULL,
    source          text NOT NULL DEFAULT 'rule' CHECK (source IN ('rule', 'static')),
    PRIMARY KEY (segment_id, user_id)
);
CREATE INDEX segment_memberships_user ON segment_memberships (user_id);

CREATE TABLE membership_changes (
    id              bigserial PRIMARY KEY,
    segment_id      uuid NOT NULL,
    user_id         text NOT NULL,
    change          text NOT NULL CHECK (change IN ('entered', 'exited')),
    segment_version integer NOT NULL,
    at              timestamptz NOT NULL
);
CREATE INDEX membership_changes_segment_at ON membership_changes (segment_id, at);
