/* placeholder: replaced by this module's implementation */
typedef int stm_placeholder_wal_wal_c;
