"""asyncpg and Redis shells: migrations, journal, recovery, hotlist, embedded servers."""
