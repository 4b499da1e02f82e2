/* fabrique-io: reference firmware for our own boards (ATmega328P, 16 MHz).
 * Protocol: see docs/firmware.md. Pins (Arduino Uno/Nano names):
 *   outputs 0..3 = D4..D7 (PD4..PD7), safe state SAFE_OUTPUTS (output 3 is a brake: safe when high)
 *   inputs  0..3 = A0..A3 (PC0..PC3), pulled up, reported as pin levels
 *   servo   0    = D9 (PB1, OC1A), 50 Hz, 500..2500 us, 0 = off
 */
#ifndef BOARD_H
#define BOARD_H

#include <stdint.h>

#define PROTOCOL_VERSION 1
#define FW_MAJOR 1
#define FW_MINOR 0
#define FW_PATCH 0
#define BOARD_NAME "fabrique-io"

#define MAX_PAYLOAD 48
#define WINDOW 8
#define N_OUTPUTS 4
#define N_INPUTS 4
#define N_SERVOS 1
#define SAFE_OUTPUTS 0x08
#define WATCHDOG_DEFAULT_MS 1000

enum kind { K_COMMAND = 1, K_REPLY = 2, K_NAK = 3, K_HELLO = 4 };
enum nak_reason { NAK_GAP = 0, NAK_NO_SESSION = 1, NAK_DAMAGED = 2 };
enum opcode {
    OP_IDENTIFY = 0x01, OP_PING = 0x02, OP_STATUS = 0x03,
    OP_SET_OUTPUT = 0x10, OP_READ_INPUTS = 0x11, OP_PULSE = 0x12, OP_SERVO = 0x13,
    OP_SAFE = 0x14, OP_WATCHDOG = 0x15, OP_ARM = 0x16, OP_ECHO = 0x20
};
enum status { ST_OK = 0, ST_UNKNOWN_OPCODE = 1, ST_BAD_ARGUMENT = 2, ST_LOCKED_SAFE = 3 };

/* io.c */
void io_init(void);
void io_safe(void);
void io_set_output(uint8_t index, uint8_t on);
uint8_t io_outputs(void);
uint8_t io_inputs(void);
void io_pulse(uint8_t index, uint16_t ms);
void io_servo(uint16_t us);
void io_poll(uint32_t now);

/* clock + uart (main.c) */
uint32_t millis(void);
void uart_write(const uint8_t *data, uint8_t len);

/* session.c: frames in, replies out */
void session_byte(uint8_t byte, uint32_t now);
void session_poll(uint32_t now);

#endif
