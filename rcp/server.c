/* placeholder: replaced by this module's implementation */
typedef int stm_placeholder_rcp_server_c;
