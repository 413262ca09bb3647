-- The audit log's row trigger stops UPDATE and DELETE but not TRUNCATE, which fires no row
-- trigger: a statement trigger refuses it too, whoever asks (the owner included). The app
-- role has no TRUNCATE privilege either (persistence/roles.py); only a superuser, or the owner
-- disabling the trigger first, can still empty the table.
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
