/* Outputs with a declared safe state, inputs, timed pulses and one servo. */
#include <avr/io.h>
#include <avr/interrupt.h>
#include "board.h"

#define OUT_SHIFT 4 /* outputs on PD4..PD7 */

static uint32_t pulse_end[N_OUTPUTS];
static uint8_t pulsing;

void io_init(void)
{
    PORTD = (PORTD & 0x0F) | (SAFE_OUTPUTS << OUT_SHIFT); /* safe level before the pins drive */
    DDRD |= 0xF0;
    DDRC &= ~0x0F;
    PORTC |= 0x0F; /* pull-ups on the inputs */
    DDRB |= _BV(PB1);
    PORTB &= ~_BV(PB1);
    TCCR1A = _BV(WGM11); /* fast PWM, TOP = ICR1, OC1A disconnected until a servo command */
    TCCR1B = _BV(WGM13) | _BV(WGM12) | _BV(CS11); /* /8: 0.5 us per tick */
    ICR1 = 39999; /* 20 ms */
}

void io_safe(void)
{
    PORTD = (PORTD & 0x0F) | (SAFE_OUTPUTS << OUT_SHIFT);
    pulsing = 0;
    io_servo(0);
}

void io_set_output(uint8_t index, uint8_t on)
{
    uint8_t mask = _BV(index + OUT_SHIFT);
    pulsing &= ~_BV(index);
    if (on)
        PORTD |= mask;
    else
        PORTD &= ~mask;
}

uint8_t io_outputs(void) { return PORTD >> OUT_SHIFT; }

uint8_t io_inputs(void) { return PINC & 0x0F; }

void io_pulse(uint8_t index, uint16_t ms)
{
    /* a pulse is the output's active (not safe) level for ms, then back to safe */
    uint8_t active = !(SAFE_OUTPUTS & _BV(index));
    io_set_output(index, active);
    pulse_end[index] = millis() + ms;
    pulsing |= _BV(index);
}

void io_servo(uint16_t us)
{
    if (us == 0) {
        TCCR1A &= ~_BV(COM1A1);
        PORTB &= ~_BV(PB1);
        return;
    }
    OCR1A = us * 2;
    TCCR1A |= _BV(COM1A1);
}

void io_poll(uint32_t now)
{
    for (uint8_t i = 0; i < N_OUTPUTS; i++) {
        if ((pulsing & _BV(i)) && (int32_t)(now - pulse_end[i]) >= 0) {
            pulsing &= ~_BV(i);
            io_set_output(i, SAFE_OUTPUTS & _BV(i));
        }
    }
}
