//! Redis lists as a system under test: a topic is a list, a push is RPUSH,
//! a pull is BLPOP. With `--batch` k a push is one RPUSH of k values and a
//! pull is `LPOP key k` (a BLPOP when the list is empty). Lists have no reader groups (no fanout) and no capacity
//! (producers never wait). What a list still holds is its LLEN; its key is
//! deleted after each run.

use bytes::Bytes;
use dchan::bench::{Conn, Reader, Result, System, Workload, Writer};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, cmd};

pub struct Redis {
    client: Client,
}

impl Redis {
    pub fn new(addr: &str) -> Result<Redis> {
        Ok(Redis {
            client: Client::open(format!("redis://{addr}/"))?,
        })
    }
}

/// One connection; commands from several tasks are pipelined on it.
pub struct RedisConn {
    conn: MultiplexedConnection,
}

/// A list and the connection that pushes to or pops from it.
pub struct List {
    conn: MultiplexedConnection,
    key: String,
}

impl System for Redis {
    type Conn = RedisConn;

    fn name(&self) -> &'static str {
        "redis"
    }

    fn supports(&self, workload: Workload) -> bool {
        workload != Workload::Fanout
    }

    async fn create(&self, topic: &str, _capacity: u64) -> Result<()> {
        let mut c = self.client.get_multiplexed_async_connection().await?;
        cmd("DEL").arg(topic).query_async::<()>(&mut c).await?;
        Ok(())
    }

    async fn remove(&self, topic: &str) -> Result<()> {
        let mut c = self.client.get_multiplexed_async_connection().await?;
        cmd("DEL").arg(topic).query_async::<()>(&mut c).await?;
        Ok(())
    }

    async fn pending(&self, topic: &str, _group: &str) -> Option<u64> {
        let mut c = self.client.get_multiplexed_async_connection().await.ok()?;
        cmd("LLEN").arg(topic).query_async(&mut c).await.ok()
    }

    async fn connect(&self, _group: &str) -> Result<RedisConn> {
        // BLPOP blocks for as long as the list is empty: no response timeout.
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(RedisConn { conn })
    }
}

impl Conn for RedisConn {
    type Writer = List;
    type Reader = List;

    async fn writer(&self, topic: &str) -> Result<List> {
        Ok(List {
            conn: self.conn.clone(),
            key: topic.to_string(),
        })
    }

    async fn reader(&self, topic: &str) -> Result<List> {
        self.writer(topic).await
    }
}

impl Writer for List {
    async fn push(&self, msg: Bytes) -> Result<()> {
        let mut conn = self.conn.clone();
        cmd("RPUSH")
            .arg(&self.key)
            .arg(msg.as_ref())
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// One RPUSH of all k.
    async fn push_batch(&self, msgs: Vec<Bytes>) -> Result<()> {
        let mut conn = self.conn.clone();
        let mut c = cmd("RPUSH");
        c.arg(&self.key);
        for m in &msgs {
            c.arg(m.as_ref());
        }
        c.query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

impl Reader for List {
    async fn pull(&self) -> Result<Bytes> {
        let mut conn = self.conn.clone();
        let (_key, value): (String, Vec<u8>) = cmd("BLPOP")
            .arg(&self.key)
            .arg(0)
            .query_async(&mut conn)
            .await?;
        Ok(value.into())
    }

    /// LPOP key k (Redis 6.2+): up to k at once; on an empty list, one
    /// BLPOP waits for the next.
    async fn pull_batch(&self, max: usize) -> Result<Vec<Bytes>> {
        let mut conn = self.conn.clone();
        let got: Option<Vec<Vec<u8>>> = cmd("LPOP")
            .arg(&self.key)
            .arg(max)
            .query_async(&mut conn)
            .await?;
        match got {
            Some(v) if !v.is_empty() => Ok(v.into_iter().map(Bytes::from).collect()),
            _ => Ok(vec![self.pull().await?]),
        }
    }
}
