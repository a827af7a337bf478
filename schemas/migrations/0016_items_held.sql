-- Set when Atomic's answer about the Item was held in the inbox (it overtook the submission's
-- commit), cleared by the transaction that applies it. The submission commits in one statement
-- only while this is null; otherwise in the transaction that applies what was held. A column of
-- the Item's row, not a look at the inbox, because a statement that waited for the row's lock
-- sees the row as committed but the rest of the database as it was when the statement began.
ALTER TABLE items ADD COLUMN held_at timestamptz;
-- Answers already held when this runs (recorded by a worker without the column) mark their Items,
-- so that the next submission applies them instead of committing past them.
UPDATE items SET held_at = now()
WHERE id IN (SELECT item_id FROM inbox WHERE outcome = 'held' AND item_id IS NOT NULL);
