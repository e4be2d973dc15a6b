/* placeholder: replaced by this module's implementation */
typedef int stm_placeholder_src_config_c;
