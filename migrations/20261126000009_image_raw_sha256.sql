-- The SHA-256 of a disk image once written (decompressed; for an uncompressed image the same
-- as sha256): the deploy agent reads the disk back and compares. Null for other kinds and for
-- images registered before plinth recorded it.
alter table images
    add column raw_sha256 text check (raw_sha256 ~ '^[0-9a-f]{64}$');
