/* fabrique-io main loop: UART in, frames through the session, timers, watchdogs. */
#include <avr/io.h>
#include <avr/interrupt.h>
#include <avr/sleep.h>
#include <avr/wdt.h>
#include "board.h"

#define RX_SIZE 128

static volatile uint8_t rx_buf[RX_SIZE];
static volatile uint8_t rx_head, rx_tail;
static volatile uint32_t ms_ticks;

/* the hardware watchdog must be off early: a watchdog reset leaves it running */
void early_wdt_off(void) __attribute__((naked, used, section(".init3")));
void early_wdt_off(void)
{
    MCUSR = 0;
    wdt_disable();
}

ISR(USART_RX_vect)
{
    uint8_t byte = UDR0;
    uint8_t next = (uint8_t)((rx_head + 1) % RX_SIZE);
    if (next != rx_tail) {
        rx_buf[rx_head] = byte;
        rx_head = next;
    } /* else dropped: the CRC and the host's retransmit repair it */
}

ISR(TIMER0_COMPA_vect) { ms_ticks++; }

uint32_t millis(void)
{
    uint32_t now;
    cli();
    now = ms_ticks;
    sei();
    return now;
}

void uart_write(const uint8_t *data, uint8_t len)
{
    while (len--) {
        while (!(UCSR0A & _BV(UDRE0)))
            ;
        UDR0 = *data++;
    }
}

static void uart_init(void)
{
    UCSR0A = _BV(U2X0);
    UBRR0 = 16; /* 115200 baud at 16 MHz */
    UCSR0B = _BV(RXEN0) | _BV(TXEN0) | _BV(RXCIE0);
    UCSR0C = _BV(UCSZ01) | _BV(UCSZ00);
}

static void clock_init(void)
{
    TCCR0A = _BV(WGM01); /* CTC */
    TCCR0B = _BV(CS01) | _BV(CS00); /* /64 */
    OCR0A = 249; /* 1 kHz */
    TIMSK0 = _BV(OCIE0A);
}

int main(void)
{
    io_init(); /* outputs take their safe state first */
    uart_init();
    clock_init();
#ifndef NO_WDT
    wdt_enable(WDTO_250MS);
#endif /* a hung firmware resets, and a reset means safe outputs */
    set_sleep_mode(SLEEP_MODE_IDLE);
    sei();
    for (;;) {
        wdt_reset();
        uint32_t now = millis();
        /* a bounded pass: a host that never stops sending must not starve the timers,
         * the pulse ends or the hardware watchdog */
        for (uint8_t budget = 32; budget && rx_tail != rx_head; budget--) {
            uint8_t byte = rx_buf[rx_tail];
            rx_tail = (uint8_t)((rx_tail + 1) % RX_SIZE);
            session_byte(byte, now);
        }
        session_poll(now);
        io_poll(now);
        cli();
        if (rx_tail == rx_head) {
            sleep_enable();
            sei();
            sleep_cpu(); /* the 1 ms tick or a received byte wakes us */
            sleep_disable();
        }
        sei();
    }
}
