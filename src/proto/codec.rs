//! Encoding and decoding of 9P messages. (Being written: see issue 2.)
