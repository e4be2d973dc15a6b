/* placeholder: replaced by this module's implementation */
typedef int stm_placeholder_engine_guard_c;
