/* placeholder: replaced by this module's implementation */
typedef int stm_placeholder_fs_mount_c;
