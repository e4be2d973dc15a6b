/* placeholder: replaced by this module's implementation */
typedef int stm_placeholder_wal_io_c;
