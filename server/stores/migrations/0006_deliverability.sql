-- Email that mailbox providers accept: one suppression list per address, campaigns that finish, frequency caps
-- counted from the delivery ledger, quiet hours that defer a delivery, and an HTML part.

-- Unsubscribes, hard bounces, emailOptOut and hand-made entries: every later mail to the address is skipped.
CREATE TABLE email_suppressions (
    address     text PRIMARY KEY CHECK (address = lower(address)),
    reason      text NOT NULL CHECK (reason IN ('unsubscribed', 'hard_bounce', 'opted_out', 'manual')),
    campaign_id uuid,  -- the campaign whose mail led to it (unsubscribe, bounce); NULL otherwise
    user_id     text,  -- whose it was when it was added; erasing the user clears it, the address stays suppressed
    detail      text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX email_suppressions_by_time ON email_suppressions (created_at);

-- SCHEDULED → SENDING → COMPLETED once every recipient has an outcome; `fanned_out_at` tells a fan-out in
-- progress (a lease another dispatcher may take over) from one that is done and waits for deliveries.
ALTER TABLE campaigns DROP CONSTRAINT campaigns_status_check;
ALTER TABLE campaigns
    ADD COLUMN body_html            text,
    ADD COLUMN frequency_cap_max    integer CHECK (frequency_cap_max > 0),
    ADD COLUMN frequency_cap_within interval,
    ADD COLUMN quiet_start          time,
    ADD COLUMN quiet_end            time,
    ADD COLUMN quiet_timezone       text,
    ADD COLUMN fanned_out_at        timestamptz,
    ADD COLUMN completed_at         timestamptz;
UPDATE campaigns SET status = 'SENDING', fanned_out_at = updated_at WHERE status = 'QUEUED';
ALTER TABLE campaigns ADD CONSTRAINT campaigns_status_check
    CHECK (status IN ('SCHEDULED', 'SENDING', 'COMPLETED', 'ACTIVE', 'CANCELLED', 'FAILED'));

-- deferred: inside the recipient's quiet hours; `job` is the rendered mail, published again at `not_before`.
-- sent_at: when the mail was handed to SMTP (claimed), what frequency caps count.
ALTER TABLE campaign_deliveries DROP CONSTRAINT campaign_deliveries_status_check;
ALTER TABLE campaign_deliveries ADD CONSTRAINT campaign_deliveries_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'skipped', 'cancelled', 'deferred'));
ALTER TABLE campaign_deliveries
    ADD COLUMN sent_at        timestamptz,
    ADD COLUMN not_before     timestamptz,
    ADD COLUMN job            jsonb,
    ADD COLUMN republished_at timestamptz;
CREATE INDEX campaign_deliveries_recent_sends ON campaign_deliveries (lower(email), sent_at)
    WHERE status IN ('sending', 'sent');
CREATE INDEX campaign_deliveries_deferred ON campaign_deliveries (not_before) WHERE status = 'deferred';
