/* placeholder: replaced by this module's implementation */
typedef int stm_placeholder_base_crc32c_c;
