-- Email campaigns and one delivery row per (campaign, user): the row is the idempotency key that
-- keeps a user from getting the same campaign twice, and its status is what the counts report.

CREATE TABLE campaigns (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    segment_id    uuid NOT NULL,
    channel       text NOT NULL DEFAULT 'EMAIL' CHECK (channel IN ('EMAIL')),
    subject       text NOT NULL,
    body          text NOT NULL,
    trigger       text NOT NULL CHECK (trigger IN ('now', 'at', 'on_enter')),
    send_at       timestamptz,
    -- SCHEDULED → SENDING → QUEUED (every job on email-jobs); on_enter campaigns stay ACTIVE
    status        text NOT NULL CHECK (status IN ('SCHEDULED', 'SENDING', 'QUEUED', 'ACTIVE', 'CANCELLED', 'FAILED')),
    audience_size integer,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX campaigns_due ON campaigns (send_at) WHERE status IN ('SCHEDULED', 'SENDING');
CREATE INDEX campaigns_on_enter ON campaigns (segment_id) WHERE status = 'ACTIVE';

CREATE TABLE campaign_deliveries (
    campaign_id uuid NOT NULL REFERENCES campaigns (id),
    user_id     text NOT NULL,
    email       text,
    -- queued → sending → sent | failed; skipped (opt-out, no address) and cancelled never reach SMTP
    status      text NOT NULL CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'skipped', 'cancelled')),
    reason      text,
    attempts    integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, user_id)
);
CREATE INDEX campaign_deliveries_status ON campaign_deliveries (campaign_id, status);
