/* The protocol's board side: COBS frames, CRC-16, in-order execution, reply cache, NAK. */
#include <string.h>
#include <util/crc16.h>
#include "board.h"

#define HEADER 3
#define MAX_FRAME (HEADER + MAX_PAYLOAD + 2)
#define MAX_ENCODED (MAX_FRAME + 2)

static uint8_t chunk[MAX_ENCODED + 1];
static uint8_t chunk_len;
static uint8_t overflow;

static uint8_t session, expected;
static uint8_t reply_len[WINDOW];
static uint8_t reply_data[WINDOW][MAX_PAYLOAD];
static uint8_t early_len[WINDOW];
static uint8_t early_held; /* bit per slot (seq % WINDOW) holding an early command */
static uint8_t gap_reported; /* a GAP NAK already asked for the frame now expected */
static uint8_t early_data[WINDOW][MAX_PAYLOAD];

static uint8_t locked_safe;
static uint16_t watchdog_ms = WATCHDOG_DEFAULT_MS;
static uint32_t last_heard, executed;

static uint16_t crc16(const uint8_t *data, uint8_t len)
{
    uint16_t crc = 0xFFFF;
    while (len--)
        crc = _crc_xmodem_update(crc, *data++); /* poly 0x1021, MSB first: CCITT-FALSE with 0xFFFF */
    return crc;
}

static void send_frame(uint8_t kind, uint8_t seq, const uint8_t *payload, uint8_t len)
{
    uint8_t body[MAX_FRAME];
    uint8_t out[MAX_ENCODED + 1];
    body[0] = kind;
    body[1] = seq;
    body[2] = len;
    memcpy(body + HEADER, payload, len);
    uint16_t crc = crc16(body, HEADER + len);
    body[HEADER + len] = crc >> 8;
    body[HEADER + len + 1] = crc & 0xFF;
    uint8_t n = HEADER + len + 2, code_at = 0, o = 1, code = 1;
    for (uint8_t i = 0; i < n; i++) { /* COBS: no block reaches 254 bytes at this size */
        if (body[i] == 0) {
            out[code_at] = code;
            code_at = o++;
            code = 1;
        } else {
            out[o++] = body[i];
            code++;
        }
    }
    out[code_at] = code;
    out[o++] = 0;
    uart_write(out, o);
}

static void send_nak(uint8_t reason, uint8_t trigger)
{
    uint8_t held = 0;
    for (uint8_t i = 1; i < WINDOW; i++)
        if (early_held & (1 << ((uint8_t)(expected + i) % WINDOW)))
            held |= 1 << (i - 1);
    uint8_t p[3] = {reason, held, trigger};
    send_frame(K_NAK, expected, p, 3);
}

static uint8_t identity(uint8_t *out)
{
    static const char name[] = BOARD_NAME;
    out[0] = PROTOCOL_VERSION;
    out[1] = FW_MAJOR;
    out[2] = FW_MINOR;
    out[3] = FW_PATCH;
    out[4] = N_OUTPUTS;
    out[5] = N_INPUTS;
    out[6] = N_SERVOS;
    memcpy(out + 7, name, sizeof name - 1);
    return 7 + sizeof name - 1;
}

static uint16_t u16(const uint8_t *p) { return ((uint16_t)p[0] << 8) | p[1]; }

/* run one command; the reply (status + data) goes to out, its length is returned */
static uint8_t execute(const uint8_t *cmd, uint8_t len, uint8_t *out)
{
    out[0] = ST_BAD_ARGUMENT;
    if (len == 0)
        return 1; /* no opcode: takes its turn, runs nothing */
    uint8_t op = cmd[0], n = len - 1;
    const uint8_t *a = cmd + 1;
    out[0] = ST_OK;
    executed++;
    switch (op) {
    case OP_IDENTIFY:
        return 1 + identity(out + 1);
    case OP_PING:
        return 1;
    case OP_STATUS:
        out[1] = locked_safe;
        out[2] = io_outputs();
        out[3] = io_inputs();
        out[4] = executed >> 24; out[5] = executed >> 16; out[6] = executed >> 8; out[7] = executed;
        out[8] = watchdog_ms >> 8; out[9] = watchdog_ms;
        return 10;
    case OP_READ_INPUTS:
        out[1] = io_inputs();
        return 2;
    case OP_ECHO:
        memcpy(out + 1, a, n < MAX_PAYLOAD - 1 ? n : MAX_PAYLOAD - 1);
        return 1 + (n < MAX_PAYLOAD - 1 ? n : MAX_PAYLOAD - 1);
    case OP_SAFE:
        io_safe();
        return 1;
    case OP_ARM:
        locked_safe = 0;
        return 1;
    case OP_WATCHDOG:
        if (n != 2 || u16(a) < 50 || u16(a) > 60000)
            break;
        watchdog_ms = u16(a);
        return 1;
    case OP_SET_OUTPUT:
    case OP_PULSE:
    case OP_SERVO:
        if (locked_safe) {
            out[0] = ST_LOCKED_SAFE;
            return 1;
        }
        if (op == OP_SET_OUTPUT && n == 2 && a[0] < N_OUTPUTS) {
            io_set_output(a[0], a[1]);
            return 1;
        }
        if (op == OP_PULSE && n == 3 && a[0] < N_OUTPUTS) {
            io_pulse(a[0], u16(a + 1));
            return 1;
        }
        if (op == OP_SERVO && n == 3 && a[0] < N_SERVOS && (u16(a + 1) == 0 || (u16(a + 1) >= 500 && u16(a + 1) <= 2500))) {
            io_servo(u16(a + 1));
            return 1;
        }
        break;
    default:
        out[0] = ST_UNKNOWN_OPCODE;
        return 1;
    }
    out[0] = ST_BAD_ARGUMENT;
    return 1;
}

static void run_in_turn(uint8_t seq, const uint8_t *cmd, uint8_t len)
{
    uint8_t slot = seq % WINDOW;
    reply_len[slot] = execute(cmd, len, reply_data[slot]);
    expected = seq + 1;
    gap_reported = 0;
    send_frame(K_REPLY, seq, reply_data[slot], reply_len[slot]);
}

static void on_frame(const uint8_t *f, uint8_t len)
{
    uint8_t kind = f[0], seq = f[1], plen = f[2];
    const uint8_t *payload = f + HEADER;
    if (kind == K_HELLO) {
        uint8_t out[MAX_PAYLOAD];
        session = 1;
        expected = seq + 1;
        early_held = 0;
        gap_reported = 0;
        memset(reply_len, 0, sizeof reply_len);
        out[0] = ST_OK;
        send_frame(K_REPLY, seq, out, 1 + identity(out + 1));
        return;
    }
    if (kind != K_COMMAND)
        return;
    if (!session) {
        uint8_t p[3] = {NAK_NO_SESSION, 0, 0};
        send_frame(K_NAK, expected, p, 3);
        return;
    }
    uint8_t distance = seq - expected;
    if (distance == 0) {
        run_in_turn(seq, payload, plen);
        while (early_held & (1 << (expected % WINDOW))) { /* the gap is filled */
            uint8_t slot = expected % WINDOW;
            early_held &= ~(1 << slot);
            run_in_turn(expected, early_data[slot], early_len[slot]);
        }
    } else if (distance >= 256 - WINDOW) { /* ran already, its reply was lost */
        uint8_t slot = seq % WINDOW;
        send_frame(K_REPLY, seq, reply_data[slot], reply_len[slot]);
    } else {
        if (distance < WINDOW) {
            uint8_t slot = seq % WINDOW;
            uint8_t again = early_held & (1 << slot);
            memcpy(early_data[slot], payload, plen);
            early_len[slot] = plen;
            early_held |= 1 << slot;
            if (gap_reported && !again)
                return; /* one NAK per gap; an early frame sent again asks again */
            gap_reported = 1;
        }
        send_nak(NAK_GAP, seq);
    }
    (void)len;
}

static uint8_t cobs_decode_chunk(void)
{
    /* decode chunk[0..chunk_len) in place; returns decoded length, 0 if malformed */
    uint8_t i = 0, o = 0;
    while (i < chunk_len) {
        uint8_t code = chunk[i];
        if (code == 0 || i + code > chunk_len)
            return 0;
        for (uint8_t k = 1; k < code; k++)
            chunk[o++] = chunk[i + k];
        i += code;
        if (code < 255 && i < chunk_len)
            chunk[o++] = 0;
    }
    return o;
}

static void on_chunk(uint32_t now)
{
    uint8_t n = overflow ? 0 : cobs_decode_chunk();
    if (n >= HEADER + 2 && chunk[2] <= MAX_PAYLOAD && n == HEADER + chunk[2] + 2
        && crc16(chunk, n - 2) == (((uint16_t)chunk[n - 2] << 8) | chunk[n - 1])) {
        last_heard = now;
        on_frame(chunk, n);
    } else if (session) {
        send_nak(NAK_DAMAGED, 0);
    }
}

void session_byte(uint8_t byte, uint32_t now)
{
    if (byte == 0) {
        if (chunk_len || overflow)
            on_chunk(now);
        chunk_len = 0;
        overflow = 0;
    } else if (chunk_len < MAX_ENCODED) {
        chunk[chunk_len++] = byte;
    } else {
        overflow = 1;
    }
}

void session_poll(uint32_t now)
{
    /* the host went silent: outputs to their safe state, and they stay there until ARM */
    if (session && !locked_safe && (uint32_t)(now - last_heard) > watchdog_ms) {
        io_safe();
        locked_safe = 1;
    }
}
