-- The receivers' per-minute tallies (webhooks/tallies.py) and what `paw status` reads of them.

-- name: add_receiver_counts
-- Adds one report's counts to the current minute. $1 sources (text[]), $2 outcomes (text[]),
-- $3 reasons (text[]), $4 counts (bigint[]): the same length, one entry per key.
INSERT INTO receiver_minutes AS m (minute, source, outcome, reason, n, last_at)
SELECT date_trunc('minute', now()), s, o, r, c, now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS t (s, o, r, c)
ON CONFLICT (minute, source, outcome, reason)
DO UPDATE SET n = m.n + EXCLUDED.n, last_at = EXCLUDED.last_at;

-- name: receiver_last_hour
-- Every count of the last hour, summed by source, outcome and reason.
SELECT source, outcome, reason, sum(n)::bigint AS n FROM receiver_minutes
WHERE minute > now() - interval '1 hour'
GROUP BY source, outcome, reason
ORDER BY source, outcome, reason;

-- name: last_received
-- When a receiver last reported a webhook received, per source (within the 7 days kept).
SELECT DISTINCT ON (source) source, last_at FROM receiver_minutes
WHERE outcome = 'received'
ORDER BY source, minute DESC;

-- name: prune_receiver_minutes
-- Deletes what is older than 7 days.
DELETE FROM receiver_minutes WHERE minute < now() - interval '7 days';
