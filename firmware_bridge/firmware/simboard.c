/* simboard: run the built firmware in simavr, its UART on a pseudo-terminal.
 *
 *   simboard FIRMWARE.elf
 *
 * stdout, one line each:  "PTY /dev/pts/N" once, then "PIN D4 1 <ms>" on every output
 * edge and "SERVO <us> <ms>" when the servo pulse width changes, 0 = off (<ms> is simulated time).
 * stdin, one line each:   "SET C0 0" drives input pin PC0 low, "QUIT" ends; so does EOF.
 * The simulation is held to real time, so the firmware's millisecond timers mean what
 * they say to the host on the other side of the pty.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "avr_ioport.h"
#include "avr_uart.h"
#include "sim_avr.h"
#include "sim_elf.h"

static avr_t *avr;
static int pty_master = -1;
static int xon = 1;
static uint8_t tx[4096];
static size_t tx_len;
static unsigned servo_us;

static double sim_ms(void) { return avr->cycle * 1000.0 / avr->frequency; }

static void uart_out(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq; (void)param;
    if (tx_len < sizeof tx)
        tx[tx_len++] = (uint8_t)value;
}

static void uart_xon(struct avr_irq_t *irq, uint32_t value, void *param) { (void)irq; (void)value; (void)param; xon = 1; }
static void uart_xoff(struct avr_irq_t *irq, uint32_t value, void *param) { (void)irq; (void)value; (void)param; xon = 0; }

static void pin_changed(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    printf("PIN %s %u %.1f\n", (const char *)param, value, sim_ms());
    fflush(stdout);
}

/* simavr 1.6 does not drive the OC1A pin from timer 1, so the servo pulse is read where the
 * hardware takes it from: COM1A1 in TCCR1A (output connected) and OCR1A (0.5 us per tick). */
static void check_servo(void)
{
    unsigned connected = avr->data[0x80] & 0x80; /* TCCR1A.COM1A1 */
    unsigned us = connected ? (avr->data[0x88] | (avr->data[0x89] << 8)) / 2 : 0;
    if (us != servo_us) {
        servo_us = us;
        printf("SERVO %u %.1f\n", us, sim_ms());
        fflush(stdout);
    }
}

static void watch_pin(char port, int pin)
{
    char *name = malloc(4);
    snprintf(name, 4, "%c%d", port, pin);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ(port), pin), pin_changed, name);
}

static void handle_stdin_line(char *line)
{
    char port;
    int pin, level;
    if (sscanf(line, "SET %c%d %d", &port, &pin, &level) == 3 && pin >= 0 && pin < 8)
        avr_raise_irq(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ(port), pin), level ? 1 : 0);
    else if (strncmp(line, "QUIT", 4) == 0)
        exit(0);
}

static double wall_ms(struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start->tv_sec) * 1000.0 + (now.tv_nsec - start->tv_nsec) / 1e6;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: simboard FIRMWARE.elf\n");
        return 2;
    }
    elf_firmware_t fw;
    memset(&fw, 0, sizeof fw);
    if (elf_read_firmware(argv[1], &fw) != 0) {
        fprintf(stderr, "simboard: cannot read %s\n", argv[1]);
        return 2;
    }
    if (!fw.mmcu[0])
        strcpy(fw.mmcu, "atmega328p");
    if (!fw.frequency)
        fw.frequency = 16000000;
    avr = avr_make_mcu_by_name(fw.mmcu);
    if (!avr) {
        fprintf(stderr, "simboard: unknown mcu %s\n", fw.mmcu);
        return 2;
    }
    avr_init(avr);
    avr->log = LOG_NONE;
    avr_load_firmware(avr, &fw);

    pty_master = posix_openpt(O_RDWR | O_NOCTTY);
    if (pty_master < 0 || grantpt(pty_master) || unlockpt(pty_master)) {
        perror("simboard: pty");
        return 2;
    }
    int slave = open(ptsname(pty_master), O_RDWR | O_NOCTTY); /* held open: no EIO while the host is away */
    struct termios raw;
    tcgetattr(slave, &raw);
    cfmakeraw(&raw);
    tcsetattr(slave, TCSANOW, &raw);
    fcntl(pty_master, F_SETFL, O_NONBLOCK);
    fcntl(0, F_SETFL, O_NONBLOCK);

    uint32_t f = 0;
    avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &f);
    f &= ~AVR_UART_FLAG_STDIO;
    avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &f);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT), uart_out, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON), uart_xon, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF), uart_xoff, NULL);
    for (int pin = 4; pin < 8; pin++)
        watch_pin('D', pin);

    printf("PTY %s\n", ptsname(pty_master));
    fflush(stdout);

    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    char line[128];
    size_t line_len = 0;
    uint8_t in[256];
    size_t in_len = 0, in_pos = 0;
    for (;;) {
        for (int i = 0; i < 400; i++) {
            int state = avr_run(avr);
            if (state == cpu_Done || state == cpu_Crashed) {
                fprintf(stderr, "simboard: firmware stopped (state %d)\n", state);
                return 1;
            }
            if (xon && in_pos < in_len)
                avr_raise_irq(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT), in[in_pos++]);
        }
        check_servo();
        if (tx_len) {
            ssize_t n = write(pty_master, tx, tx_len);
            if (n > 0) {
                memmove(tx, tx + n, tx_len - n);
                tx_len -= n;
            }
        }
        if (in_pos >= in_len) {
            ssize_t n = read(pty_master, in, sizeof in);
            in_len = n > 0 ? (size_t)n : 0;
            in_pos = 0;
        }
        char c;
        ssize_t got;
        while ((got = read(0, &c, 1)) == 1) {
            if (c == '\n') {
                line[line_len] = 0;
                handle_stdin_line(line);
                line_len = 0;
            } else if (line_len < sizeof line - 1) {
                line[line_len++] = c;
            }
        }
        if (got == 0)
            return 0; /* stdin closed: whoever started us is gone, so are we */
        double ahead = sim_ms() - wall_ms(&start);
        if (ahead > 1.0) {
            struct pollfd fds[2] = {{pty_master, POLLIN, 0}, {0, POLLIN, 0}};
            poll(fds, in_pos < in_len ? 0 : 2, (int)ahead);
        }
    }
}
