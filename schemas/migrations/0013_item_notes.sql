-- What people did to an Item that is not a state change: `paw item retry` (who, why, the message
-- sent). The history holds transitions only (each has an outcome event); `paw item show` lists the
-- notes beside it.
CREATE TABLE item_notes (
    id          bigserial PRIMARY KEY,
    item_id     uuid        NOT NULL REFERENCES items (id),
    kind        text        NOT NULL,
    actor       text        NOT NULL,
    text        text        NOT NULL,
    message_id  text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX item_notes_item ON item_notes (item_id, id);
