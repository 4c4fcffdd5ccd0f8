//! A read-only MC146818 CMOS real-time clock at ports 0x70 (index) and 0x71 (data),
//! reading the host's clock in UTC.
//!
//! Why it exists: Debian's kernel has the CMOS RTC driver built in, and without a chip
//! every register reads 0xff, so register A's update-in-progress bit never clears and
//! the driver's probe waits out its polling loops: 8.8 s of a 22 s cold boot in the KVM
//! lab. With this clock the probe finds a working RTC at once and the guest's wall clock
//! is right from boot (the agent still sets it exactly, on a cold boot and on a clone).
//!
//! Registers: 0x00 seconds, 0x02 minutes, 0x04 hours, 0x06 weekday, 0x07 day, 0x08
//! month, 0x09 year (BCD), 0x0a A (divider on, no update in progress), 0x0b B (24-hour,
//! BCD, no interrupts), 0x0c C (no interrupt flags), 0x0d D (valid RAM and time), 0x32
//! century; every other register reads 0. Writes of the data port are ignored: the guest
//! cannot set the host's clock, and nothing asks it to keep CMOS memory. The index is
//! not part of a snapshot (the guest writes it before every read).

use std::time::{SystemTime, UNIX_EPOCH};

pub const INDEX_PORT: u16 = 0x70;
pub const DATA_PORT: u16 = 0x71;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// Register A: the 32.768 kHz divider and a 1024 Hz rate, UIP clear.
const A_NORMAL: u8 = 0x26;
/// Register B: 24-hour mode (BCD, no interrupts, no daylight saving).
const B_24_HOUR: u8 = 0x02;
/// Register D: valid RAM and time.
const D_VALID: u8 = 0x80;

/// A UTC time broken down as the RTC keeps it.
#[derive(Debug, PartialEq, Eq)]
struct CivilTime {
    year: i64,
    month: u8,
    day: u8,
    weekday: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

/// Breaks `seconds` since the Unix epoch down into a UTC date (the proleptic Gregorian
/// calendar, by the days-to-civil algorithm of H. Hinnant's `chrono`-compatible paper);
/// `weekday` is 1 for Sunday, as the RTC counts.
fn civil(seconds: i64) -> CivilTime {
    let days = seconds.div_euclid(86_400);
    let in_day = seconds.rem_euclid(86_400);
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    CivilTime {
        year,
        month: month as u8,
        day: day as u8,
        // 1970-01-01 was a Thursday (5 when Sunday is 1).
        weekday: ((days + 4).rem_euclid(7) + 1) as u8,
        hour: (in_day / 3600) as u8,
        minute: (in_day / 60 % 60) as u8,
        second: (in_day % 60) as u8,
    }
}

fn bcd(value: u8) -> u8 {
    ((value / 10) << 4) | (value % 10)
}

/// The clock's one piece of state: the register the guest selected.
#[derive(Default)]
pub struct CmosRtc {
    index: u8,
}

impl CmosRtc {
    pub fn write(&mut self, port: u16, value: u8) {
        if port == INDEX_PORT {
            // Bit 7 is the NMI mask on a PC; not a register bit.
            self.index = value & 0x7f;
        }
    }

    pub fn read(&self, port: u16) -> u8 {
        if port != DATA_PORT {
            return 0xff;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs() as i64)
            .unwrap_or(0);
        register(self.index, &civil(now))
    }
}

fn register(index: u8, time: &CivilTime) -> u8 {
    match index {
        REG_SECONDS => bcd(time.second),
        REG_MINUTES => bcd(time.minute),
        REG_HOURS => bcd(time.hour),
        REG_WEEKDAY => bcd(time.weekday),
        REG_DAY => bcd(time.day),
        REG_MONTH => bcd(time.month),
        REG_YEAR => bcd(time.year.rem_euclid(100) as u8),
        REG_CENTURY => bcd(time.year.div_euclid(100).clamp(0, 99) as u8),
        REG_A => A_NORMAL,
        REG_B => B_24_HOUR,
        REG_C => 0,
        REG_D => D_VALID,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_break_down_as_the_calendar_has_them() {
        assert_eq!(
            civil(0),
            CivilTime {
                year: 1970,
                month: 1,
                day: 1,
                weekday: 5,
                hour: 0,
                minute: 0,
                second: 0
            }
        );
        // 2000-02-29 12:34:56 UTC, a Tuesday (3).
        assert_eq!(
            civil(951_827_696),
            CivilTime {
                year: 2000,
                month: 2,
                day: 29,
                weekday: 3,
                hour: 12,
                minute: 34,
                second: 56
            }
        );
        // 2026-12-31 23:59:59 UTC, a Thursday (5).
        let end = civil(1_798_761_599);
        assert_eq!(
            (end.year, end.month, end.day, end.weekday),
            (2026, 12, 31, 5)
        );
        assert_eq!((end.hour, end.minute, end.second), (23, 59, 59));
    }

    #[test]
    fn registers_read_in_bcd_with_no_update_in_progress() {
        let time = civil(1_798_761_599);
        assert_eq!(register(REG_YEAR, &time), 0x26);
        assert_eq!(register(REG_CENTURY, &time), 0x20);
        assert_eq!(register(REG_MONTH, &time), 0x12);
        assert_eq!(register(REG_SECONDS, &time), 0x59);
        assert_eq!(register(REG_A, &time) & 0x80, 0, "UIP clear");
        assert_eq!(register(REG_D, &time), 0x80, "valid");
        let mut rtc = CmosRtc::default();
        rtc.write(INDEX_PORT, 0x80 | REG_B);
        assert_eq!(
            rtc.read(DATA_PORT),
            B_24_HOUR,
            "the NMI bit is not an index bit"
        );
        rtc.write(DATA_PORT, 0x00);
        assert_eq!(rtc.read(DATA_PORT), B_24_HOUR, "writes change nothing");
        assert_eq!(rtc.read(INDEX_PORT), 0xff);
    }
}
