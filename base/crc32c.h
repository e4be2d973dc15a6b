/*
 * crc32c.h - CRC-32C (Castagnoli), as used by WAL records, RCP frames and
 * definition checksums: reflected polynomial 0x82F63B78, init and final
 * xor 0xFFFFFFFF. crc32c(0, "123456789", 9) == 0xE3069283.
 *
 * Uses the SSE4.2 crc32 instruction when the CPU has it (checked once at
 * first use), slicing-by-8 tables otherwise.
 */
#ifndef STM_CRC32C_H
#define STM_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continues a CRC: pass 0 to start; crc32c(crc32c(0,a,n),b,m) == crc32c(0,ab,n+m). */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);

/* The two implementations, exposed so tests can check both on any CPU. */
uint32_t crc32c_sw(uint32_t crc, const void *data, size_t len);
uint32_t crc32c_hw(uint32_t crc, const void *data, size_t len); /* only if crc32c_hw_available() */
int crc32c_hw_available(void);

#endif
