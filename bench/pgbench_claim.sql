-- pgbench script of bench/run.py: the store's ceiling for one seat claim, a conditional single-row update
-- on `bench_seats` (shaped like the store's `seats`: same columns, keys, checks and partial indexes).
-- Variables from the command line: -D events=N -D per_event=M (the table holds N x M seats).
\set e random(1, :events)
\set p random(1, :per_event)
UPDATE bench_seats SET status = 'held', booking_id = 'bkg_' || :client_id || '_' || :p, user_id = 'u-' || :client_id
 WHERE event_id = 'evt_' || :e AND position = :p AND status = 'available';
